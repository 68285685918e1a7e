"""One dlt pass over a table (sql_database source into DuckDB), run by bench/bench_compare.py in
the separate benchmark virtualenv (requirements-bench.txt). Prints {"rows", "seconds"}.

    python bench/dlt_reader.py URL TABLE BACKEND WORKDIR
"""

from __future__ import annotations

import json
import sys
import time

import dlt
from dlt.sources.sql_database import sql_table


def main() -> None:
    url, table, backend, workdir = sys.argv[1:5]
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{backend}",
        destination=dlt.destinations.duckdb(f"{workdir}/{backend}.duckdb"),
        dataset_name="bench",
        pipelines_dir=workdir,
    )
    resource = sql_table(credentials=url, table=table, backend=backend, chunk_size=50_000)
    t0 = time.perf_counter()
    pipeline.run(resource, write_disposition="replace")
    seconds = time.perf_counter() - t0
    with pipeline.sql_client() as client:
        rows = client.execute_sql(f"SELECT count(*) FROM {table}")[0][0]
    print(json.dumps({"rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
