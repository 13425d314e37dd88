"""Issue-7 soak: SIGKILL the real CLI job at random moments and rerun it; fuzz the readers and the planner
with thousands of inputs. Prints the figures (kills injected, nothing-lost results, inputs tried).

    .venv/bin/python benchmarks/soak_faults.py kills [--random 6] [--armed 4] [--edge 768] [--seed 0]
    .venv/bin/python benchmarks/soak_faults.py fuzz  [--examples 2000]

``kills``: one uninterrupted ``python -m flows.cli run ... --keep-work`` gives the reference files and the
time the job takes once its work folder exists (every run reports to one ``prefect server`` started on
127.0.0.1 for the soak). Then each round kills the job's whole process group:
``--random`` rounds at a uniformly random moment of that span (blocks, seam merges or writing the outputs;
every other one of writing the outputs only, from the first file in OUTPUT on),
``--armed`` rounds at a chosen point inside the process (``tests/hardening/killer.py``: a block write,
a seam merge, half-way through a COG, just before the report). After each kill, every final file that
exists must already equal the reference (atomic renames: never partial); the rerun must exit 0, give
byte-identical files and leave no ``*.tw-tmp-*`` behind. Scenes come from the real Landsat RGB.byte.tif.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, make_bundle, make_scene

OUT = ROOT / "benchmarks" / "out" / "soak"
FILES = ("labels.tif", "probabilities.tif")
ENV = {**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
ENV.setdefault("PREFECT_HOME", str(OUT / "prefect"))


def _cli(scene: Path, out: Path, bundle: Path, armed: tuple[str, int] | None = None) -> list[str]:
    args = ["run", str(scene), str(out), "-m", str(bundle), "--block-size", "128", "--probabilities"]
    args += ["--keep-work", "--device", "cpu"]
    if armed is None:
        return [sys.executable, "-m", "flows.cli", *args]
    code = (
        "import sys; from tests.hardening.killer import arm; "
        f"arm({armed[0]!r}, {armed[1]}); from flows.cli.app import app; app(prog_name='tilewise')"
    )
    return [sys.executable, "-c", code, *args]


def _stem(scene: Path) -> str:
    return scene.name.removesuffix(".tif")


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tw-tmp-" in p.name] if out.exists() else []


def _watch(out: Path) -> tuple[float | None, float | None]:
    """(work folder exists, outputs started: a temporary or final file in OUTPUT) timestamps."""
    work = (out / ".tilewise-work").exists()
    final = out.exists() and any(not p.name.startswith(".") for p in out.iterdir())
    now = time.perf_counter()
    return (now if work else None), (now if final else None)


def _reference(scene: Path, bundle: Path) -> tuple[Path, float, float, float]:
    """Uninterrupted run: its output folder, total seconds, seconds from work folder to the end, and
    seconds of writing outputs (first file in OUTPUT to the end)."""
    out = OUT / "reference"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    quiet = {"env": ENV, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(_cli(scene, out, bundle), **quiet)  # type: ignore[call-overload]
    started = writing = None
    while proc.poll() is None:
        work, final = _watch(out)
        started, writing = started or work, writing or final
        time.sleep(0.005)
    end = time.perf_counter()
    if proc.returncode != 0:
        tail = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        raise SystemExit(f"reference run failed: {tail}")
    return out, end - t0, end - (started or t0), end - (writing or end)


def _differs(out: Path, ref: Path, name: str, *, missing_ok: bool = False) -> bool:
    """``out/name`` is not byte-identical to the reference (a missing file counts unless ``missing_ok``)."""
    if not (out / name).exists():
        return not missing_ok
    return (out / name).read_bytes() != (ref / name).read_bytes()


def _progress(out: Path) -> str:
    """Where the job was when it died."""
    stem_files = [p.name for p in out.iterdir()] if out.exists() else []
    blocks = len(list(out.glob(".tilewise-work/*/blocks/*.npz")))
    merged = len(list(out.glob(".tilewise-work/*/merged/*")))
    finals = [n for n in stem_files if not n.startswith(".") and ".tw-tmp-" not in n]
    return f"{blocks} block files, {merged} merged, finals: {','.join(sorted(finals)) or '-'}"


@contextmanager
def prefect_server() -> Iterator[None]:
    """One ``prefect server`` on 127.0.0.1 for the whole soak (each CLI run would otherwise start its
    own temporary server); stopped by its process id at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (OUT / "prefect-server.log").open("wb")
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], env=ENV, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"prefect server did not start; see {log.name}") from None
                time.sleep(0.5)
        ENV["PREFECT_API_URL"] = url
        yield
    finally:
        ENV.pop("PREFECT_API_URL", None)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def kills(n_random: int, n_armed: int, edge: int, seed: int) -> None:
    with prefect_server():
        _kills(n_random, n_armed, edge, seed)


def _kills(n_random: int, n_armed: int, edge: int, seed: int) -> None:
    rng = random.Random(seed)
    scene = make_scene(OUT / f"soak-{edge}.tif", edge)
    bundle = make_bundle(OUT / "bundle", 3, [8, 16], patch=64)
    ref, total, span, fin = _reference(scene, bundle)
    stem = _stem(scene)
    print(f"reference: {total:.1f} s in all, {span:.1f} s from work folder to report, {fin:.1f} s on outputs")
    armed_points = [("compute", 36), ("merge", 36), ("outputs", 2), ("report", 1)]
    # random moments: of the whole job (from its work folder on), or of writing its outputs only
    rounds = [("random" if i % 2 == 0 else "final", None) for i in range(n_random)]
    rounds += [("armed", armed_points[i % 4]) for i in range(n_armed)]
    rows, lost = [], 0
    for i, (kind, point) in enumerate(rounds):
        out = OUT / f"round-{i}"
        shutil.rmtree(out, ignore_errors=True)
        armed = None if point is None else (point[0], rng.randint(1, point[1]))
        proc = subprocess.Popen(
            _cli(scene, out, bundle, armed),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the kill takes the whole job
        )
        when = rng.uniform(0.0, span if kind == "random" else fin)
        if armed is None:
            started = None
            while proc.poll() is None:
                work, final = _watch(out)
                started = started or (work if kind == "random" else final)
                if started is not None and time.perf_counter() - started >= when:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        proc.wait()
        with_signal = proc.returncode == -signal.SIGKILL
        where = _progress(out)
        partial = [f for f in FILES if _differs(out, ref, f"{stem}_{f}", missing_ok=True)]
        rerun = subprocess.run(_cli(scene, out, bundle), env=ENV, capture_output=True, text=True)
        same = rerun.returncode == 0 and not any(_differs(out, ref, f"{stem}_{f}") for f in FILES)
        temps = _temps(out)
        ok = same and not partial and not temps
        lost += not ok
        label = f"t+{when:.1f}s" if armed is None else f"{armed[0]}#{armed[1]}"
        rows.append((i, kind, label, with_signal, where, not partial, rerun.returncode, same, len(temps)))
        print(
            f"round {i:2d} {kind:6s} {label:14s} killed={with_signal!s:5s} [{where}] "
            f"finals-complete={not partial!s:5s} rerun-rc={rerun.returncode} identical={same!s:5s} "
            f"temps={len(temps)} -> {'nothing lost' if ok else 'LOST'}"
        )
        if ok:
            shutil.rmtree(out, ignore_errors=True)
    killed = sum(r[3] for r in rows)
    print(
        json.dumps(
            {
                "rounds": len(rows),
                "sigkilled": killed,
                "finished_before_kill": len(rows) - killed,
                "nothing_lost": len(rows) - lost,
                "lost": lost,
                "reference_s": round(total, 1),
                "work_span_s": round(span, 1),
            }
        )
    )
    if lost:
        raise SystemExit(1)


def fuzz(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings

    from tests.hardening import fuzzing as f

    data = str(ROOT.parent / "shared" / "data")
    targets = {
        "geotiff reader": (f.tiff_inputs(data), f.check_tiff),
        "nifti reader": (f.nii_inputs(data), lambda case: f.check_nii(*case)),
        "zarr reader": (f.zarr_inputs(), lambda case: f.check_zarr(*case)),
        "tiling planner": (f.plan_inputs(), f.check_plan),
        "infer exactness": (f.infer_inputs(), f.check_infer),
    }
    cfg = settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    for name, (strategy, check) in targets.items():
        t0 = time.perf_counter()
        cfg(given(strategy)(check))()
        print(f"{name:16s} {time.perf_counter() - t0:7.1f} s")
    print(json.dumps({"tried": dict(f.TRIED), "outcomes": dict(sorted(f.OUTCOMES.items()))}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kills")
    k.add_argument("--random", type=int, default=6)
    k.add_argument("--armed", type=int, default=4)
    k.add_argument("--edge", type=int, default=768)
    k.add_argument("--seed", type=int, default=0)
    z = sub.add_parser("fuzz")
    z.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    os.chdir(ROOT)  # `-c` children import tests.hardening from here
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cmd == "kills":
        kills(args.random, args.armed, args.edge, args.seed)
    else:
        fuzz(args.examples)


if __name__ == "__main__":
    main()
