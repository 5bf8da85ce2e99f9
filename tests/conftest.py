import sys
from pathlib import Path

# tests/ itself, so that tests can import shared helpers from it (fake_datasets, hw_helpers), and the repository root,
# so that they can import bench/ (the benchmarks, not installed) however pytest is started.
_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))
if str(_TESTS.parent) not in sys.path:
    sys.path.insert(1, str(_TESTS.parent))

# The test session allocates like `spikeforge train` does: PyTorch's tensors of 2 MiB and more on transparent huge
# pages (spikeforge.allocator; PyTorch reads the switch at its first tensor, before any test module is imported).
from spikeforge.allocator import use_huge_pages  # noqa: E402

use_huge_pages("auto")


# --- the randomized regression's summary (tests/sim/test_regress.py, `make regress`) --------------------------
# Each shard records its cases as a user property, which xdist sends to the controller with the test's report; the
# controller sums them up once every shard has run.

def pytest_sessionstart(session):
    import time

    session.config.regress_started = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import json
    import time

    shards = [json.loads(value) for reports in terminalreporter.stats.values() for report in reports
              if getattr(report, "when", None) == "call"
              for name, value in getattr(report, "user_properties", ()) if name == "regress"]
    if not shards:
        return
    from spikeforge.strategies import summarize

    wall = time.time() - config.regress_started
    summary = summarize([r for shard in shards for r in shard["results"]])
    failures = [shard["failure"] for shard in shards if shard["failure"]]
    out_of_time = sum(1 for report in terminalreporter.stats.get("skipped", ())
                      if "test_regress.py::test_regress[" in getattr(report, "nodeid", ""))
    summary.update(simulator=shards[0]["simulator"], shards=len(shards), shards_skipped_for_time=out_of_time,
                   requested=sum(shard["examples"] for shard in shards), passed=summary["networks"],
                   failed=len(failures), failures=failures, wall_s=round(wall, 1),
                   networks_per_minute=round(summary["networks"] / wall * 60, 1))
    folder = Path(config.rootpath) / "build" / "regress"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write = terminalreporter.write_line
    terminalreporter.section("randomized regression")
    write(f"{summary['passed']} networks passed, {summary['failed']} failed (shrunk and written), of "
          f"{summary['requested']} requested, in {summary['simulator']}: {wall / 60:.1f} min, "
          f"{summary['networks_per_minute']} networks/min; RTL build + simulation "
          f"{summary['rtl_wall_s_per_network']} s per network, of which simulation "
          f"{summary['rtl_sim_s_per_network']} s" + (f"; {out_of_time} shards out of time" if out_of_time else ""))
    write("networks with: " + ", ".join(f"{k} {v}" for k, v in summary["with"].items()))
    write(f"populations {summary['populations']}, T {summary['time_steps']}, lif populations "
          f"{summary['lif_populations']}")
    write(f"kernels {len(summary['kernels'])}, strides {summary['strides']}, paddings {summary['paddings']}, leak "
          f"shifts {summary['leak_shifts']} (-1: none), lanes {summary['lanes']}, input bits {summary['input_bits']}")
    for failure in failures:
        write(f"FAILED: {failure['message']}")
    write(f"summary: {folder / 'summary.json'}")
