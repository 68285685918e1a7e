"""The README and docs/ stay true: every setting the code reads is documented, and nothing else
is; every link points at a page and heading that exist; every shell command of README.md and
docs/ that needs no cloud runs verbatim on a copy of the checkout after the quick start (each
other one is listed with the reason it is not run); and the Logs Insights query of
docs/operating.md gives the right sums over the lines the function really writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

import lambda_function as lf

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"
PAGES = {"README.md": README} | {
    f"docs/{p.name}": p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))
}
CONFIGURATION = PAGES["docs/configuration.md"]
TOPICS = [  # the pages issue 19 asks for, one per topic
    "configuration.md",
    "how-it-works.md",
    "several-tables.md",
    "s3-sync.md",
    "connector-sdk.md",
    "deploying.md",
    "operating.md",
    "testing.md",
    "performance.md",
    "security.md",
    "limitations.md",
]


def documented_settings() -> list[str]:
    section = CONFIGURATION.split("## The settings", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)


def test_every_setting_is_in_the_configuration_table_and_only_those():
    assert sorted(documented_settings()) == sorted(lf.SETTINGS)


def test_every_setting_the_code_reads_is_declared():
    source = (ROOT / "lambda_function.py").read_text(encoding="utf-8")
    read = set(re.findall(r'secrets(?:\.get\(|, )"([a-z0-9_]+)"', source))
    read |= set(re.findall(r'_setting\(\s*secrets,\s*"([a-z0-9_]+)"', source))
    assert read and read <= set(lf.SETTINGS), read - set(lf.SETTINGS)


def test_documented_defaults_match_the_code():
    rows = {
        m[0]: m[1]
        for m in re.findall(r"^\| `([a-z_]+)` \|[^|]*\| `?([^|`]*)`? \|", CONFIGURATION, re.M)
    }
    assert rows["port"] == str(lf.DEFAULT_PORT)
    assert rows["limit"] == str(lf.DEFAULT_LIMIT)
    assert rows["max_response_bytes"] == str(lf.DEFAULT_MAX_RESPONSE_BYTES)
    assert rows["sslmode"] == lf.DEFAULT_SSLMODE
    assert rows["connect_timeout_s"] == str(int(lf.DEFAULT_CONNECT_TIMEOUT_S))


def test_quick_start_has_exactly_the_two_commands():
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["./demo.sh", "./test.sh"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./test.sh" in ci


def test_readme_is_short_and_maps_every_page():
    """Issue 19: the README is what a newcomer reads in five minutes, and a map of docs/."""
    assert len(README.splitlines()) < 250
    for page in sorted(p.name for p in DOCS.glob("*.md")):
        assert f"(docs/{page})" in README, f"README's map lacks docs/{page}"
    assert set(TOPICS) <= {p.name for p in DOCS.glob("*.md")}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_each_page_starts_with_what_it_is_for(page):
    title, blank, intro = PAGES[f"docs/{page}"].splitlines()[:3]
    assert title.startswith("# ") and blank == "" and intro.startswith("What this page is for:")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    outside = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", outside, flags=re.M)}


def test_every_link_points_at_a_page_and_heading_that_exist():
    for name, text in PAGES.items():
        base = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            file = (base / path).resolve() if path else ROOT / name
            assert file.exists(), f"{name}: link to missing {target}"
            if anchor:
                assert anchor in _anchors(file.read_text(encoding="utf-8")), (
                    f"{name}: link to missing heading {target}"
                )


# -- Every documented command, verbatim ---------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run the command as written, in ``cwd`` of the copy (with the served database's
    REDSHIFT_LAMBDA_* exports when ``database``); its output must hold ``expect``."""

    cwd: str = "."
    database: bool = False
    expect: str = ""
    exit_status: int = 0


@dataclass(frozen=True)
class Skip:
    """Not run here, and why."""

    reason: str


AWS = Skip("needs an AWS account")
YOURS = Skip("a placeholder for your own cluster's value")
SDK = "build/sdk"
# Every shell command of README.md and docs/ (first occurrence; later ones are not run again).
COMMANDS: dict[str, Run | Skip] = {
    "./demo.sh": Run(expect="Source vs destination after the incremental sync"),
    "./test.sh": Skip("the suite itself (CI runs it through .ci/run)"),
    '.venv/bin/python -c \'import duckdb; print(duckdb.connect("demo.duckdb", read_only=True)'
    '.sql("SELECT status, count(*) FROM orders GROUP BY status"))\'': Run(expect="status"),
    "export REDSHIFT_LAMBDA_HOST=<your-cluster>.<id>.<region>.redshift.amazonaws.com": YOURS,
    "export REDSHIFT_LAMBDA_PASSWORD='<its password>'": YOURS,
    ".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows": Run(
        database=True, expect="sync complete"
    ),
    "scripts/sdk_project.sh": Run(database=True, expect="build/sdk"),
    "cd build/sdk": Run(),
    "../../scripts/sdk.sh debug --configuration configuration.json": Run(
        cwd=SDK, expect="SYNC SUCCEEDED"
    ),
    '../../.venv/bin/python -c \'import duckdb; print(duckdb.connect("files/warehouse.db", '
    'read_only=True).sql("SELECT count(*) FROM tester.orders"))\'': Run(cwd=SDK, expect="2000"),
    "../../scripts/sdk.sh reset --yes": Run(cwd=SDK, expect="reset successful"),
    "PATH=../../scripts/sdk-bin:$PATH ../../.venv/bin/python connector.py": Run(
        cwd=SDK, expect="SYNC SUCCEEDED"
    ),
    "scripts/sdk_project.sh && cd build/sdk": Run(database=True),
    "../../scripts/sdk.sh deploy --api-key <BASE64_API_KEY> --destination <destination name> "
    "--connection redshift_orders --configuration configuration.json": Skip(
        "needs a Fivetran account and its API key"
    ),
    "./demo.sh --rows 20000 --max-response-bytes 1000000 --quiet": Run(expect="incremental"),
    "./demo.sh --s3 --rows 20000 --s3-max-bytes 2000000 --quiet": Run(expect="S3 object(s)"),
    "./demo.sh --help": Run(expect="--serve"),
    "./build_zip.sh": Run(expect="sha256"),
    "./build_zip.sh --python 3.13": Skip("./build_zip.sh runs here; tests/test_packaging.py too"),
    "./build_zip.sh --arch arm64": Skip("./build_zip.sh runs here; tests/test_packaging.py too"),
    "./build_zip.sh --output /tmp/redshift-lambda.zip": Skip(
        "tests/test_packaging.py runs build_zip.sh --output (into its own directory)"
    ),
    "sam deploy --guided": AWS,
    ".venv/bin/cfn-lint template.yaml": Run(),
    "aws lambda create-function --function-name redshift-lambda --runtime python3.12 --handler "
    "lambda_function.lambda_handler --timeout 900 --memory-size 512 --architectures x86_64 "
    "--role arn:aws:iam::<account>:role/<execution role> "
    "--zip-file fileb://dist/redshift-lambda-x86_64.zip": AWS,
    "aws lambda update-function-code --function-name redshift-lambda "
    "--zip-file fileb://dist/redshift-lambda-x86_64.zip": AWS,
    "aws lambda invoke --function-name redshift-lambda --payload fileb://my_setup_test.json "
    "out.json": AWS,
    "aws logs tail /aws/lambda/redshift-lambda --follow --filter-pattern '\"has_more\"'": AWS,
    "aws s3api put-bucket-lifecycle-configuration --bucket my-fivetran-sync-bucket "
    '--lifecycle-configuration \'{"Rules": [{"ID": "abort-incomplete-uploads", '
    '"Status": "Enabled", "Filter": {}, '
    '"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}\'': AWS,
    "sam deploy --guided --parameter-overrides S3SyncBucket=my-fivetran-sync-bucket ...": AWS,
    "export REDSHIFT_LAMBDA_PORT=5439": YOURS,
    "export REDSHIFT_LAMBDA_DBNAME=dev": YOURS,
    "export REDSHIFT_LAMBDA_USER=fivetran_reader": YOURS,
    "export REDSHIFT_LAMBDA_TABLE=public.orders REDSHIFT_LAMBDA_CURSOR=updated_at "
    "REDSHIFT_LAMBDA_PRIMARY_KEY=id": Run(database=True),
    ".venv/bin/python lambda_function.py events/first_sync.json": Run(
        database=True, expect='"hasMore": false'
    ),
    ".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows --save-state "
    "orders.state.json": Run(database=True, expect="done: "),
    ".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows --state "
    "orders.state.json --save-state orders.state.json": Run(database=True, expect="done: "),
    ".venv/bin/python lambda_function.py events/several_tables.json --all --no-rows --save-state "
    "tables.state.json": Run(database=True, expect='"products": 500'),
    "REDSHIFT_LAMBDA_TABLE= REDSHIFT_LAMBDA_CURSOR= REDSHIFT_LAMBDA_PRIMARY_KEY= "
    'REDSHIFT_LAMBDA_TABLES=\'[{"table": "public.orders", "cursor": "updated_at", '
    '"primary_key": "id"}, "public.products"]\' .venv/bin/python lambda_function.py '
    "events/first_sync.json --all --no-rows": Run(database=True, expect='"products": 500'),
    ".venv/bin/python lambda_function.py --help": Run(expect="--save-state"),
    "PROPERTY_EXAMPLES=2000 PROPERTY_RANDOM=1 ./test.sh tests/test_property.py": Skip(
        "runs tests of the suite (about an hour)"
    ),
    "./test.sh -k paging -x": Skip("runs tests of the suite"),
    "./test.sh tests/test_cli.py -q": Skip("runs tests of the suite"),
    ".venv/bin/python bench/bench.py": Skip("a 2-minute benchmark; tests/test_bench.py runs it"),
    ".venv/bin/python bench/bench.py --quick": Skip("tests/test_bench.py runs the benchmark"),
    ".venv/bin/python bench/bench.py --write": Skip("rewrites BENCHMARKS.md"),
    ".venv/bin/python bench/bench_s3.py": Skip("a 3-minute benchmark of 1 GB"),
    ".venv/bin/python bench/bench_s3.py --quick": Skip("a benchmark, not a how-to"),
    ".venv/bin/python bench/bench_s3.py --write": Skip("rewrites BENCHMARKS.md"),
}


def shell_commands(text: str) -> list[str]:
    """The commands of every ```sh block: continuation lines joined (a backslash at the end,
    or a quote still open), comments dropped."""
    commands: list[str] = []
    for indent, block in re.findall(r"^( *)```sh\n(.*?)^ *```", text, flags=re.M | re.S):
        block = "\n".join(line.removeprefix(indent) for line in block.splitlines())
        pending = ""
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            pending = f"{pending} {line.strip()}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:
                continue  # a quote spans lines
            if words:
                commands.append(_without_comment(pending))
            pending = ""
        assert not pending, f"unterminated command: {pending}"
    return commands


def _without_comment(command: str) -> str:
    """The command without its trailing ``# comment`` (a # outside quotes after a blank)."""
    quote = ""
    for i, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and i > 0 and command[i - 1] in " \t":
            return command[:i].rstrip()
    return command.rstrip()


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command, each command at its first occurrence."""
    seen: dict[str, str] = {}
    for page, text in PAGES.items():
        for command in shell_commands(text):
            seen.setdefault(command, page)
    return [(page, command) for command, page in seen.items()]


def test_every_documented_command_is_catalogued():
    """A new command in the docs must be run below, or say why it cannot be."""
    found = {command for _, command in documented_commands()}
    assert found - set(COMMANDS) == set(), "add these to COMMANDS"
    assert set(COMMANDS) - found == set(), "these are no longer in the docs"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files (tracked, or new and not ignored) after the quick start:
    its .venv is the one running these tests."""
    copy = tmp_path_factory.mktemp("checkout") / "redshift-lambda"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [n.decode() for n in listed.stdout.split(b"\0") if n]
    else:  # not a git checkout (an unpacked archive): every file but the generated ones
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache"}
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    for name in names:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return copy


@pytest.fixture(scope="module")
def served(checkout: Path) -> Iterator[dict[str, str]]:
    """`./demo.sh --serve --rows 2000` in the copy: the REDSHIFT_LAMBDA_* exports it prints."""
    serving = subprocess.Popen(
        [str(checkout / "demo.sh"), "--serve", "--rows", "2000"],
        cwd=checkout,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert serving.stdout is not None
        exports: dict[str, str] = {}
        for line in serving.stdout:
            if line.startswith("export "):
                exports = dict(pair.split("=", 1) for pair in shlex.split(line)[1:])
            if line.startswith("Waiting"):
                break
        assert exports, "./demo.sh --serve printed no export line"
        yield exports
    finally:
        # SIGTERM: the demo cleans up on it as on Ctrl-C (a SIGINT may be ignored when the
        # suite runs in the background)
        serving.send_signal(signal.SIGTERM)
        try:
            serving.communicate(timeout=60)  # reads the rest and closes the pipe
        except subprocess.TimeoutExpired:
            serving.kill()
            serving.communicate()
            raise


@pytest.fixture(scope="module")
def sdk_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME in which the SDK's own update checks were made just now (none is made)."""
    home = tmp_path_factory.mktemp("home")
    now = int(time.time()) + 24 * 3600
    (home / ".fivetran" / "connector_sdk").mkdir(parents=True)
    (home / ".fivetran" / "connector_sdk" / "_last_version_check").write_text(str(now))
    (home / ".fivetran" / "connector_sdk_core").mkdir(parents=True)
    (home / ".fivetran" / "connector_sdk_core" / "_config.json").write_text(
        json.dumps({"lastVersionCheck": now, "licenseNoticeShown": True})
    )
    return home


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: any web request fails at once


def run_documented(
    command: str, how: Run, checkout: Path, served: dict[str, str], home: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDSHIFT_LAMBDA_")}
    # Not activated: .venv/bin is not on PATH, as in a new shell after the quick start.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(sys.prefix) / "bin"
    )
    env.pop("VIRTUAL_ENV", None)
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    if how.cwd == SDK:  # the SDK path must need no network: every web request fails
        env.update(HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, NO_PROXY="")
        env.update(http_proxy=DEAD_PROXY, https_proxy=DEAD_PROXY)
    if how.database:
        env.update(served)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=checkout / how.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_the_commands_of_each_page_run_verbatim(page, checkout, served, sdk_home):
    """Issue 19: the SDK how-to failed verbatim (`fivetran: command not found`, pipreqs not
    found, then 15 s of pipreqs retries offline, a DuckDB command line never installed)."""
    for where, command in documented_commands():
        how = COMMANDS[command]
        if where != page or isinstance(how, Skip):
            continue
        done = run_documented(command, how, checkout, served, sdk_home)
        output = done.stdout + done.stderr
        assert done.returncode == how.exit_status, f"{command}\n{output[-3000:]}"
        assert how.expect in output, f"{command}: no {how.expect!r} in\n{output[-3000:]}"
        assert "Traceback" not in output, f"{command}\n{output[-3000:]}"
        assert served["REDSHIFT_LAMBDA_PASSWORD"] not in output
        if how.cwd == SDK:
            assert "pipreqs" not in output and "NameResolutionError" not in output, output


# -- The Logs Insights query, over the function's own log lines --------------------------


def logs_insights_query() -> str:
    operating = PAGES["docs/operating.md"]
    blocks = re.findall(r"^```\n(fields .*?)^```", operating, flags=re.M | re.S)
    assert len(blocks) == 1
    return blocks[0]


def run_query(query: str, lines: list[str]) -> dict[str, int]:
    """The query's filter (``like`` substrings), regex parse and stats, as Logs Insights runs
    them (its ``(?<name>...)`` groups are Python's ``(?P<name>...)``)."""
    steps = [s.strip() for s in query.split("\n| ")]
    assert steps[0] == "fields @timestamp, @message"
    likes = re.findall(r"@message like '([^']*)'", steps[1])
    assert steps[1].startswith("filter ") and len(likes) == 2
    pattern = re.fullmatch(r"parse @message /(.*)/", steps[2])
    assert pattern is not None
    regex = re.compile(pattern.group(1).replace("(?<", "(?P<"))
    rows = []
    for line in lines:
        if all(like in line for like in likes):
            found = regex.search(line)
            assert found is not None, line
            rows.append({k: int(v) for k, v in found.groupdict().items()})
    stats = re.fullmatch(r"stats (.*)", steps[3])
    assert stats is not None
    result: dict[str, int] = {}
    for item in stats.group(1).split(", "):
        function, argument, name = re.fullmatch(r"(\w+)\((.*)\) as (\w+)", item).groups()  # type: ignore[union-attr]
        values = [r[argument] for r in rows] if argument != "*" else [1 for _ in rows]
        result[name] = {"count": len, "sum": sum, "max": max}[function](values)
    return result


@pytest.mark.slow
def test_the_logs_insights_query_sums_what_the_function_delivered(checkout, served, sdk_home):
    """Issue 19, item 3: the documented query parsed `24812, "deletes": 0` as rows, so
    sum(rows) was wrong, and the batch line had no per-table counts. Here: a sync of two
    tables in several invocations, with deletes, and the query run over its real log lines."""
    tables = json.dumps(
        [{"table": "public.orders", "cursor": "updated_at", "primary_key": "id"}, "public.products"]
    )
    common = (
        f"REDSHIFT_LAMBDA_TABLE= REDSHIFT_LAMBDA_CURSOR= REDSHIFT_LAMBDA_PRIMARY_KEY= "
        f"REDSHIFT_LAMBDA_TABLES={shlex.quote(tables)} REDSHIFT_LAMBDA_LIMIT=300 "
        ".venv/bin/python lambda_function.py events/first_sync.json --all --no-rows"
    )
    first = run_documented(
        f"{common} --save-state logs.state.json", Run(database=True), checkout, served, sdk_home
    )
    assert first.returncode == 0, first.stderr
    import pg8000.native

    with pg8000.native.Connection(
        served["REDSHIFT_LAMBDA_USER"],
        host=served["REDSHIFT_LAMBDA_HOST"],
        port=int(served["REDSHIFT_LAMBDA_PORT"]),
        database=served["REDSHIFT_LAMBDA_DBNAME"],
        password=served["REDSHIFT_LAMBDA_PASSWORD"],
    ) as con:
        gone = con.run(
            "DELETE FROM public.products WHERE code IN"
            " (SELECT code FROM public.products ORDER BY code LIMIT 4) RETURNING code"
        )
        con.run(
            "UPDATE public.orders SET updated_at = updated_at + interval '1 day' WHERE id <= 700"
        )
    second = run_documented(
        f"{common} --state logs.state.json", Run(database=True), checkout, served, sdk_home
    )
    assert second.returncode == 0, second.stderr
    responses = [json.loads(line) for line in second.stdout.splitlines()]
    assert len(responses) > 2
    lines = [line for line in second.stderr.splitlines() if '"event": "batch"' in line]
    assert len(lines) == len(responses)
    records = [json.loads(line.split(" INFO ", 1)[1]) for line in lines]
    for record, response in zip(records, responses, strict=True):
        assert record["table_rows"] == response["insert"]  # --no-rows: the counts per table
        assert record["table_deletes"] == response.get("delete", {})
    result = run_query(logs_insights_query(), second.stderr.splitlines())
    assert result == {
        "invocations": len(responses),
        "rows_copied": sum(sum(r["insert"].values()) for r in responses),
        "deletes_sent": len(gone),
        "largest": max(r["bytes"] for r in records),
    }
    assert result["rows_copied"] > 700 and result["deletes_sent"] == 4
