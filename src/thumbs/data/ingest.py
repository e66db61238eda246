"""``thumbs ingest``: feedback logs → ``DIR/events.parquet``, ``DIR/quarantine.jsonl``, ``DIR/manifest.json``.

The flow, one DuckDB connection for the whole run:

    SOURCE ──stage──▶ one row per input row (file, row, raw JSON text)      (staging.py)
           ──classify──▶ reason, or canonical values and a vote            (shapes.py, signals.py, eventlog.py)
           ──merge──▶ event ids, duplicates, splits, the three outputs     (this module)

Every input row ends in exactly one manifest counter, so per source
``rows_in == rows_ok + rows_quarantined + rows_duplicate + rows_neutral``.

Events: ``event_id`` is the md5 of ``user_id, prompt, completion, up|down, timestamp`` (each
length-prefixed; plus a builtin source's vote key, see :mod:`thumbs.data.builtin`), so the same
vote read from any source gets the same id. Re-ingesting a source replaces what it
added before; other sources' events stay. Events are stored sorted by ``event_id``, so the file
does not depend on the order sources were ingested in.

The folder is owned by one ingest at a time, and its files are replaced together: everything is
written into a staging folder beside it and swapped in at the end (:mod:`thumbs.data.store`), so
a failure, ``kill -9`` or Ctrl-C leaves the previous set whole. A source that cannot be read
whole fails the run and nothing is written, unless ``keep_going``: then the run goes on, the rows
read before the fault are ingested like any others, and the manifest marks the source
``"status": "failed"`` with its ``error`` (a source not read at all keeps what it had before).

Splits are recomputed over all events on every run. ``prompt``: a prompt's md5 puts it wholly in
one split. ``time``: a prompt whose first vote is later than the ``1 - eval_fraction`` quantile
of vote times is eval, wholly; prompts without times fall back to the md5 rule. The builtin
VADER sources share one prompt per corpus, so there the rated text is what is kept apart.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import typer

from thumbs import folders
from thumbs.data import builtin, eventlog, macros, shapes, signals, store, trl
from thumbs.data.sources import Source, resolve
from thumbs.data.staging import Interrupts, stage
from thumbs.data.store import print_summary, read_events
from thumbs.errors import ThumbsError

__all__ = ["ingest", "ingest_command", "print_summary", "read_events"]

DEFAULT_MAX_ROW_BYTES = 4 << 20
DEFAULT_EVAL_FRACTION = 0.1
SPLIT_BY = ("prompt", "time")
SHAPES = ("auto", "flat", "chat", "event-log")
META_KEYS_MAX = 200  # more unmapped columns than this: meta is built by a JSON patch instead
MEMORY_LIMIT = "1GB"  # DuckDB spills into the staging folder beyond this
SOURCE_OPTIONS = ("map", "format", "shape", "table", "query", "feedback", "positive_at", "negative_at")
SOURCE_OPTIONS += ("regenerate_as_down", "retract_values")
RUN_OPTIONS = ("split_by", "eval_fraction", "max_row_bytes")
CANDIDATES = """src_index INTEGER, source VARCHAR, file VARCHAR, row BIGINT, reason VARCHAR, detail VARCHAR,
    raw VARCHAR, raw_bytes BIGINT, raw_truncated BOOLEAN, prompt VARCHAR, completion VARCHAR, vote VARCHAR,
    user_id VARCHAR, ts TIMESTAMPTZ, weight DOUBLE, conversation_id VARCHAR, generation_id VARCHAR,
    vote_key VARCHAR, event VARCHAR, meta VARCHAR, outcome VARCHAR, event_id VARCHAR"""


def ingest(
    sources: list[str] | tuple[str, ...], out_dir: str | Path, *, keep_going: bool = False, **options
) -> dict:
    """Ingest ``sources`` into ``out_dir`` and return the manifest (also written as ``manifest.json``).

    ``options`` are the CLI's, by their Python names: ``map`` (dict or ``FIELD=COLUMN`` strings),
    ``config`` (a YAML/JSON file with these keys and a ``sources`` list of specs or dicts of
    per-source options), ``format``, ``shape``, ``table``, ``query``, ``feedback``,
    ``positive_at``, ``negative_at``, ``regenerate_as_down``, ``retract_values`` (comma-separated
    words or a list), ``split_by``, ``eval_fraction``, ``max_row_bytes``. Raises
    :class:`ThumbsError` for bad options, when nothing could be read, or when a source could not
    be read whole and ``keep_going`` is false; the folder is then untouched.
    """
    run, plans = _plan(list(sources), options)
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ThumbsError("a file stands where the output folder should be", file=str(out),
                          hint="remove it or choose another --out")  # fmt: skip
    with folders.owned(out, "thumbs ingest"), Interrupts() as interrupts:
        store.recover(out)
        previous = store.read_manifest(out)
        if (out / "events.parquet").is_file():
            store.verify_events(out)  # merged below: it must be whole
        store.verify_quarantine(out, previous)  # so must the rows rejected before
        split_by = run.get("split_by") or previous.get("split_by") or "prompt"
        eval_fraction = run.get("eval_fraction")
        if eval_fraction is None:
            eval_fraction = previous.get("eval_fraction", DEFAULT_EVAL_FRACTION)
        if split_by not in SPLIT_BY:
            raise ThumbsError(f"--split-by {split_by}: unknown", hint=f"use one of {', '.join(SPLIT_BY)}")
        if not 0 <= eval_fraction < 1:
            raise ThumbsError(f"--eval-fraction {eval_fraction}: must be at least 0 and below 1")
        max_row_bytes = int(run.get("max_row_bytes") or DEFAULT_MAX_ROW_BYTES)
        staged = folders.staging(out)
        try:
            con = duckdb.connect(
                config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(staged / ".spill")}
            )
            try:
                entries, errors = _read_all(con, plans, max_row_bytes, interrupts)
                _check_failures(entries, errors, keep_going, out)
                manifest = store.merge(con, out, staged, entries, previous, split_by, eval_fraction)
            finally:
                con.close()
            shutil.rmtree(staged / ".spill", ignore_errors=True)
            manifest["errors"] = errors
            interrupts.check()
            store.finish(staged, out, manifest)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # gone already once swapped in
    return manifest


def _read_all(con, plans: list[dict], max_row_bytes: int, interrupts: Interrupts) -> tuple[list, list]:
    """Each source into ``cands``: its manifest entries, and ``errors`` for the sources that failed."""
    con.execute("SET TimeZone = 'UTC'")
    macros.install(con)
    con.execute(f"CREATE TEMP TABLE cands ({CANDIDATES})")
    entries, errors = [], []
    for index, plan in enumerate(plans):
        try:
            entry = _read_source(con, index, plan, max_row_bytes)
            if any(e["source"] == entry["source"] for e in entries):
                raise ThumbsError("given twice in one run", file=entry["source"])
        except ThumbsError as err:
            interrupts.check()
            con.execute("DELETE FROM cands WHERE src_index = ?", [index])
            errors.append({"source": str(plan["source"]), "error": err.message, "rows_read": 0})
            continue
        interrupts.check()
        entries.append(entry)
        if entry["status"] == "failed":
            errors.append({"source": entry["source"], "error": entry["error"], "rows_read": entry["rows_in"]})
    return entries, errors


def _check_failures(entries: list[dict], errors: list[dict], keep_going: bool, out: Path) -> None:
    """Nothing read is an error; so is a failed source, unless the user said to keep going."""
    listed = "".join(f"\n  {e['source']}: {e['error']}" for e in errors)
    if sum(e["rows_in"] for e in entries) == 0:
        raise ThumbsError(
            f"nothing could be read{listed or ' (every source is empty)'}", hint="check the SOURCE arguments"
        )
    if errors and not keep_going:
        raise ThumbsError(
            f"{len(errors)} source(s) could not be read whole; nothing was written, {out} is as it was{listed}",
            hint="fix or leave out the source, or pass --keep-going to ingest the rest (the failure is recorded "
            "in manifest.json)",
        )


def _plan(specs: list[str], options: dict) -> tuple[dict, list[dict]]:
    """Run options and one dict of options per source: config file < command line < per-source config."""
    config = _read_config(options.pop("config", None))
    unknown = set(options) - set(SOURCE_OPTIONS) - set(RUN_OPTIONS)
    if unknown:
        raise ThumbsError(f"unknown ingest option(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in options.items() if v is not None}
    merged = {k: v for k, v in config.items() if k != "sources"} | given
    merged["map"] = _parse_map(config.get("map")) | _parse_map(given.get("map"))
    run = {k: merged[k] for k in RUN_OPTIONS if k in merged}
    defaults = {k: merged[k] for k in SOURCE_OPTIONS if k in merged}
    plans = []
    for item in [*(config.get("sources") or []), *specs]:
        item = {"source": item} if isinstance(item, str) else dict(item)
        if "source" not in item or set(item) - set(SOURCE_OPTIONS) - {"source"}:
            raise ThumbsError(f"a config source needs 'source' and only {', '.join(SOURCE_OPTIONS)}: {item}")
        plan = defaults | item
        plan["map"] = defaults["map"] | _parse_map(item.get("map"))
        plans.append(plan)
    if not plans:
        raise ThumbsError("no SOURCE given", hint="give files, globs, folders, a database or builtin:vader")
    return run, plans


def _read_config(path) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ThumbsError(f"cannot read the config: {err}", file=str(path)) from None
    if not isinstance(data, dict):
        raise ThumbsError("the config must be a mapping of options", file=str(path))
    return {k.replace("-", "_"): v for k, v in data.items()}


def _parse_map(value) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = {}
    for item in value:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise ThumbsError(f"--map {item}: expected FIELD=COLUMN", hint="e.g. --map label=rating")
        pairs[field.strip()] = column.strip()
    return pairs


def _read_source(con, index: int, plan: dict, max_row_bytes: int) -> dict:
    """Stage and classify one source into ``cands``; return its manifest entry (counts come later)."""
    shape = plan.get("shape") or "auto"
    if shape not in SHAPES:
        raise ThumbsError(f"--shape {shape}: unknown", hint=f"use one of {', '.join(SHAPES)}")
    source = resolve(plan["source"], fmt=plan.get("format"), table=plan.get("table"), query=plan.get("query"))
    scale = signals.user_scale(plan.get("positive_at"), plan.get("negative_at"))
    reading = _Reading(plan["map"], scale, bool(plan.get("regenerate_as_down")), max_row_bytes)
    reading.retract_values = signals.retract_values(plan.get("retract_values"))
    failures = stage(con, source, "_thumbs_staged", max_row_bytes=max_row_bytes)
    if shape == "event-log" or plan.get("feedback"):
        entry, outcome = _read_event_log(con, source, plan.get("feedback"), reading, failures)
    else:
        found = trl.rewrite(con, "_thumbs_staged") if source.kind != "builtin" else {}  # TRL's rows
        entry, outcome = _read_votes(con, source, shape, reading)
        entry |= {"trl": found} if found else {}
    entry |= {k: getattr(source, k) for k in ("table", "query") if getattr(source, k)}
    con.execute(
        f"""INSERT INTO cands SELECT *, CASE WHEN outcome = 'event' THEN {store.EVENT_ID} END FROM (
            SELECT ?, ?, file, row, reason, detail, raw, raw_bytes, raw_truncated, prompt, completion, vote,
                user_id, ts, weight, conversation_id, generation_id, vote_key, event, meta, {outcome} AS outcome
            FROM _thumbs_cand)""",
        [index, entry["source"]],
    )
    entry["rows_in"] = con.execute("SELECT count(*) FROM _thumbs_cand").fetchone()[0]
    entry["index"] = index
    entry["status"] = "failed" if failures else "ok"
    if failures:
        named = [
            f["error"] if f["file"] == entry["source"] else f"{f['file']}: {f['error']}" for f in failures
        ]
        entry["error"] = "; ".join(named)
    con.execute("DROP TABLE _thumbs_staged; DROP TABLE _thumbs_cand")
    return entry


@dataclass
class _Reading:
    """What the options say about reading any one table: mapping, vote scale, regenerate, size limit."""

    explicit: dict[str, str]
    scale: signals.Scale | None
    regenerate_as_down: bool
    max_row_bytes: int
    retract_values: tuple[str, ...] = signals.RETRACT_VALUES

    def plan(self, con, staged: str, shape: str, where: str) -> shapes.Plan:
        """Find the fields of a staged table; ``generations.``/``feedback.`` map one half of an event log."""
        prefix = f"{shape}." if shape in ("generations", "feedback") else None
        mine = {k: v for k, v in self.explicit.items() if "." not in k}
        if prefix:
            mine |= {k[len(prefix) :]: v for k, v in self.explicit.items() if k.startswith(prefix)}
        keys = shapes.object_keys(con, staged)
        shape, mapping = shapes.resolve(shape, keys, mine, where)
        plan = shapes.Plan(shape, mapping, self.scale, self.regenerate_as_down, self.max_row_bytes)
        plan.retract_values = self.retract_values
        if all("." not in column for column in mapping.values()):
            unmapped = [k for k in keys if k not in mapping.values()]
            plan.meta_keys = unmapped if len(unmapped) <= META_KEYS_MAX else None
        return plan


def _read_votes(con, source: Source, shape: str, reading: _Reading) -> tuple[dict, str]:
    """A flat or chat source (or a builtin one) → ``_thumbs_cand``."""
    if source.kind == "builtin":
        plan = shapes.Plan("flat", dict(builtin.MAPPING), builtin.SCALE, reading.regenerate_as_down)
        plan.max_row_bytes, plan.meta_keys = reading.max_row_bytes, list(builtin.META_KEYS)
    else:
        plan = reading.plan(con, "_thumbs_staged", shape, source.name)
    shapes.classify(con, "_thumbs_staged", "_thumbs_cand", plan)
    if plan.scale is None and "label" in plan.mapping:
        plan.scale = signals.resolve_numeric(con, "_thumbs_cand", source.name, plan.mapping["label"])
    entry = {"source": source.name, "kind": source.kind, "shape": plan.shape, "files": source.files}
    entry |= {"mapping": plan.mapping, "signal": plan.scale.describe() if plan.scale else None, "detail": {}}
    return entry, eventlog.outcome_sql()


def _read_event_log(
    con, source: Source, feedback_spec: str | None, reading: _Reading, failures: list[dict]
) -> tuple[dict, str]:
    """Generations (the staged source) joined with their feedback events → ``_thumbs_cand``.

    Files of the feedback whose reading stopped part way are added to ``failures``.
    """
    if not feedback_spec:
        raise ThumbsError(
            "an event log needs --feedback", file=source.name, hint="name the feedback table or file"
        )
    feedback = _feedback_source(source, feedback_spec)
    failures += stage(con, feedback, "_thumbs_staged_fb", max_row_bytes=reading.max_row_bytes)
    gens = reading.plan(con, "_thumbs_staged", "generations", source.name)
    votes = reading.plan(con, "_thumbs_staged_fb", "feedback", feedback.name)
    shapes.classify(con, "_thumbs_staged", "_thumbs_gen", gens)
    shapes.classify(con, "_thumbs_staged_fb", "_thumbs_fb", votes)
    if votes.scale is None and "label" in votes.mapping:
        votes.scale = signals.resolve_numeric(con, "_thumbs_fb", feedback.name, votes.mapping["label"])
    detail = eventlog.join(con, "_thumbs_gen", "_thumbs_fb", "_thumbs_cand")
    con.execute("DROP TABLE _thumbs_staged_fb; DROP TABLE _thumbs_gen; DROP TABLE _thumbs_fb")
    same_db = feedback.url is not None and feedback.url == source.url
    name = f"{source.name}+{feedback.name.rsplit('#', 1)[1] if same_db else feedback.name}"
    entry = {"source": name, "kind": source.kind, "shape": "event-log"}
    entry |= {"files": list(dict.fromkeys(source.files + feedback.files))}
    entry |= {"mapping": {"generations": gens.mapping, "feedback": votes.mapping}}
    entry |= {"signal": votes.scale.describe() if votes.scale else None, "detail": detail}
    entry["retract_values"] = list(votes.retract_values)
    return entry, "outcome"


def _feedback_source(source: Source, feedback: str) -> Source:
    """``--feedback``: a table (or a query) of the same database, else files of their own."""
    if source.kind in ("sqlite", "postgres"):
        query = feedback if " " in feedback.strip() else None
        spec = source.url if source.kind == "postgres" else f"sqlite:{source.url}"
        return resolve(spec, table=None if query else feedback, query=query)
    return resolve(feedback)


def ingest_command(
    sources: list[str] = typer.Argument(
        None,
        help="Files, folders, globs (.jsonl .csv .tsv .parquet, .gz too), app.db, postgresql://…, builtin:vader, "
        "a datasets folder (save_to_disk) or hf:ORG/NAME (from the local cache)",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for events.parquet, quarantine.jsonl, manifest.json."
    ),
    map_: list[str] = typer.Option(
        None, "--map", help="FIELD=COLUMN (COLUMN may be a.b for nested JSON); repeat."
    ),
    config: Path = typer.Option(None, "--config", help="YAML/JSON with these options and a per-source list."),
    format_: str = typer.Option(
        None, "--format", help="jsonl | json | csv | tsv | parquet | sqlite, if not by extension."
    ),
    shape: str = typer.Option(None, "--shape", help="auto | flat | chat | event-log."),
    table: str = typer.Option(
        None, "--table", help="SQLite/PostgreSQL table (the generations of an event log)."
    ),
    query: str = typer.Option(None, "--query", help="SQLite/PostgreSQL query instead of --table."),
    feedback: str = typer.Option(None, "--feedback", help="Event log: the feedback table (SQL) or file(s)."),
    positive_at: float = typer.Option(
        None, "--positive-at", help="Numeric votes at or above this are thumbs up."
    ),
    negative_at: float = typer.Option(
        None, "--negative-at", help="Numeric votes at or below this are thumbs down."
    ),
    regenerate_as_down: bool = typer.Option(
        None, "--regenerate-as-down/--no-regenerate-as-down", help="A regenerate is a thumbs down."
    ),
    retract_values: str = typer.Option(
        None,
        "--retract-values",
        help="Event log: vote values that take back the voter's earlier vote, comma-separated "
        f"(default {','.join(signals.RETRACT_VALUES)}; '' for none).",
    ),
    split_by: str = typer.Option(None, "--split-by", help="prompt (default) | time."),
    eval_fraction: float = typer.Option(
        None, "--eval-fraction", help="Share of prompts held out (default 0.1)."
    ),
    max_row_bytes: int = typer.Option(
        None, "--max-row-bytes", help=f"Larger rows are quarantined (default {DEFAULT_MAX_ROW_BYTES})."
    ),
    keep_going: bool = typer.Option(
        False,
        "--keep-going",
        help="A source that fails does not stop the run: its rows read before the fault are ingested, "
        "and manifest.json marks it failed, with the reason.",
    ),
) -> None:
    """Mine feedback logs into one clean event table; every row not kept is quarantined with a reason."""
    options = {"map": map_ or None, "config": config, "format": format_, "shape": shape, "table": table}
    options |= {"query": query, "feedback": feedback, "positive_at": positive_at, "negative_at": negative_at}
    options |= {
        "regenerate_as_down": regenerate_as_down,
        "retract_values": retract_values,
        "split_by": split_by,
        "eval_fraction": eval_fraction,
    }
    started = time.perf_counter()
    manifest = ingest(sources or [], out, keep_going=keep_going, **options, max_row_bytes=max_row_bytes)
    print_summary(manifest, out, time.perf_counter() - started)
    read = sum(entry["rows_in"] for entry in manifest["sources"])
    if read and not manifest["events"]:  # written, nothing lost, but nothing to train on: not a success
        raise ThumbsError(
            f"none of the {read:,} rows read became an event; {Path(out) / 'quarantine.jsonl'} holds each "
            "with its reason",
            hint="map fields with --map FIELD=COLUMN (or pick --shape / --format); `thumbs ingest --help` lists them",
        )
