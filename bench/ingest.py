"""thumbs ingest on a million-vote chat log: events per second and peak memory, against a peer.

    python bench/ingest.py [--rows 1000000] [--peer-rows 100000] [--json] [--keep DIR]

Writes a JSONL log of ``--rows`` votes in the chat shape (OpenAI ``messages`` with the vote on
the last assistant turn; a system, a user and an assistant message each; votes as up/down,
👍/👎, true/false and ±1), 1% of them bad (malformed JSON, a missing field, a wrong type, an
unknown vote, an empty completion, invalid UTF-8, one kind each in turn), into a temporary folder.
Then, each in its own subprocess so that peak memory is its own:

- thumbs: ``thumbs.data.ingest.ingest([log], out)``, the whole run (read, check, dedup, split,
  write events.parquet, quarantine.jsonl, manifest.json).
- peer: the same work written without an engine, line by line in Python: ``json.loads`` each
  line, the same checks, chat-prompt JSON, meta, md5 event id and prompt split, quarantine lines
  with number and raw text; then pandas for dedup, sort and ``to_parquet`` (zstd). It runs on the
  first ``--peer-rows`` lines; its time is scaled linearly to ``--rows``.

Reported: seconds, CPU seconds (user + system, all threads), events/s (events written / seconds),
peak memory = VmHWM of the process
(resident high-water mark from /proc/self/status, which counts DuckDB's native memory, not
only Python's), the peer/thumbs time ratio, and the targets (under 20 s, under 2 GiB). The load
average is printed too: on a shared machine the wall time is only as good as the cores it got.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 20.0
TARGET_PEAK_GIB = 2.0
VOTES = ['"up"', '"down"', '"👍"', '"👎"', "true", "false", "1", "-1"]
TOPICS = ["python", "taxes", "gardening", "the moon", "sourdough", "chess", "rust", "jazz"]
BAD = [
    '{"messages": [{"role": "user", "content": "cut off',  # malformed JSON
    '{"user_id": "u1", "feedback": "up"}',  # no messages
    '{"messages": "not a list", "feedback": "up"}',  # wrong type
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "feedback": "meh?"}',
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "feedback": "up"}',
]
INVALID_UTF8 = b'{"messages": [{"role": "user", "content": "caf\xe9"}], "feedback": "up"}'


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark log: ``rows`` lines, every hundredth one bad."""
    rng = random.Random(seed)
    with path.open("wb") as handle:
        for i in range(rows):
            if i % 100 == 50:
                kind = (i // 100) % (len(BAD) + 1)
                handle.write((BAD[kind].encode() if kind < len(BAD) else INVALID_UTF8) + b"\n")
                continue
            topic = TOPICS[i % len(TOPICS)]
            line = (
                f'{{"conversation_id": "c{i // 3}", "user_id": "u{rng.randrange(5000)}", '
                f'"timestamp": "2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}Z", '
                f'"messages": [{{"role": "system", "content": "You are a helpful assistant."}}, '
                f'{{"role": "user", "content": "Tell me something about {topic}, question {i % 20011}."}}, '
                f'{{"role": "assistant", "content": "Here is a fact about {topic}: {rng.randrange(10**6)} is a '
                f'number worth knowing."}}], "feedback": {VOTES[i % len(VOTES)]}, "model": "smol-v{i % 3}"}}'
            )
            handle.write(line.encode() + b"\n")


def peak_resident_bytes() -> int:
    """VmHWM: the most resident memory this process has held (native allocations included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_thumbs(log: Path, out: Path) -> dict:
    from thumbs.data.ingest import ingest

    started = time.perf_counter()
    manifest = ingest([str(log)], out)
    seconds = time.perf_counter() - started
    keys = ("rows_in", "rows_ok", "rows_quarantined", "rows_duplicate", "rows_neutral")
    return {"seconds": seconds, "events": manifest["events"], **{k: manifest[k] for k in keys}}


UP = {"up": True, "👍": True, True: True, "down": False, "👎": False, False: False, -1: False}  # True == 1
MAPPED = ("messages", "feedback", "user_id", "timestamp", "conversation_id")


def _part(value) -> bytes:
    return b"~|" if value is None else f"{len(value.encode())}:{value}|".encode()


def run_peer(log: Path, out: Path, rows: int) -> dict:
    """The plain-Python baseline doing the same work one line at a time, then pandas for the table.

    Same outputs as thumbs for this log: the chat prompt as json.dumps text, meta of the unmapped
    keys, an md5 event id, dedup on it, the md5 prompt split, quarantine lines with their line
    number and raw text, Parquet with zstd.
    """
    import hashlib

    import pandas as pd

    started = time.perf_counter()
    records, quarantined = [], []
    with log.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number > rows:
                break
            try:
                row = json.loads(raw)
                messages = row["messages"]
                last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
                completion = messages[last]["content"]
                label = UP[row["feedback"]]
                if not isinstance(completion, str) or not completion.strip():
                    raise ValueError("empty completion")
            except (ValueError, KeyError, TypeError) as err:
                text = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
                quarantined.append({"row": number, "reason": type(err).__name__, "raw": text})
                continue
            prompt = json.dumps(
                [{"role": m["role"], "content": m["content"]} for m in messages[:last]], ensure_ascii=False
            )
            meta = {k: v for k, v in row.items() if k not in MAPPED}
            stamp = pd.Timestamp(row["timestamp"]).value // 1000 if row.get("timestamp") else None
            vote = "up" if label else "down"
            key = b"".join([_part(row.get("user_id")), _part(prompt), _part(completion), vote.encode(), b"|"])
            records.append(
                {
                    "event_id": hashlib.md5(
                        key + _part(None if stamp is None else str(stamp)) + _part(None)
                    ).hexdigest(),
                    "prompt": prompt,
                    "completion": completion,
                    "label": label,
                    "user_id": row.get("user_id"),
                    "timestamp": row.get("timestamp"),
                    "weight": 1.0,
                    "conversation_id": row.get("conversation_id"),
                    "split": "eval" if hashlib.md5(prompt.encode()).hexdigest()[:8] < "1999999a" else "train",
                    "meta": json.dumps(meta, ensure_ascii=False, separators=(",", ":")) if meta else None,
                }
            )
    frame = pd.DataFrame.from_records(records).drop_duplicates("event_id")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame.sort_values("event_id").to_parquet(out / "peer.parquet", compression="zstd", index=False)
    with (out / "quarantine.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in quarantined)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "events": len(frame), "rows_quarantined": len(quarantined), "rows_in": number}


def _worker(args: argparse.Namespace) -> None:
    log, out = Path(args.log), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_thumbs(log, out) if args.worker == "thumbs" else run_peer(log, out, args.peer_rows)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result |= {"cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_bytes": peak_resident_bytes()}
    print(json.dumps(result))


def _spawn(kind: str, log: Path, out: Path, peer_rows: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--log", str(log), "--out", str(out)]
    done = subprocess.run([*cmd, "--peer-rows", str(peer_rows)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--peer-rows", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--keep", help="write the log and outputs here instead of a temporary folder")
    parser.add_argument("--worker", choices=["thumbs", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    with tempfile.TemporaryDirectory(prefix="thumbs-bench-ingest-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "votes.jsonl"
        started = time.perf_counter()
        write_log(log, args.rows)
        made = time.perf_counter() - started
        thumbs = _spawn("thumbs", log, folder / "thumbs", args.peer_rows)
        peer_rows = min(args.peer_rows, args.rows)
        peer = _spawn("peer", log, folder / "peer", peer_rows)
        peer_scaled = peer["seconds"] * args.rows / peer_rows
        report = {
            "rows": args.rows,
            "log_bytes": log.stat().st_size,
            "log_written_s": round(made, 2),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
            "thumbs": thumbs | {"events_per_s": thumbs["events"] / thumbs["seconds"]},
            "peer": peer | {"rows": peer_rows, "scaled_seconds": peer_scaled},
            "peer_over_thumbs_time": peer_scaled / thumbs["seconds"],
            "targets": {
                "seconds": TARGET_SECONDS,
                "peak_gib": TARGET_PEAK_GIB,
                "met": thumbs["seconds"] < TARGET_SECONDS and thumbs["peak_bytes"] < TARGET_PEAK_GIB * 2**30,
            },
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return None
    gib = 2**30
    print(f"log: {args.rows:,} votes, {report['log_bytes'] / 2**20:.0f} MiB (1% bad), written in {made:.1f}s")
    print(f"machine: {report['cpus']} CPUs, load average {report['load_average'][0]:.2f} (1 min)")
    print(
        f"thumbs ingest: {thumbs['seconds']:.1f}s ({thumbs['cpu_seconds']:.1f} CPU-s), "
        f"{report['thumbs']['events_per_s']:,.0f} events/s, "
        f"peak resident {thumbs['peak_bytes'] / gib:.2f} GiB (VmHWM); {thumbs['events']:,} events, "
        f"{thumbs['rows_quarantined']:,} quarantined, {thumbs['rows_duplicate']:,} duplicates"
    )
    print(
        f"peer (json.loads per line + pandas) on {peer_rows:,} rows: {peer['seconds']:.1f}s "
        f"({peer['cpu_seconds']:.1f} CPU-s), "
        f"peak {peer['peak_bytes'] / gib:.2f} GiB; scaled to {args.rows:,}: {peer_scaled:.1f}s"
    )
    print(f"peer / thumbs time: {report['peer_over_thumbs_time']:.1f}x")
    verdict = "met" if report["targets"]["met"] else "NOT met"
    print(f"targets (< {TARGET_SECONDS:.0f}s, < {TARGET_PEAK_GIB:.0f} GiB peak): {verdict}")
    return None


if __name__ == "__main__":
    main()
