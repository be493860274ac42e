"""Collectives across real processes: mpirun (OpenMPI) on this machine only."""
import os
import subprocess

BUILD = os.environ.get("VLFT_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SELFTEST = os.path.join(BUILD, "tests", "bin", "comm_selftest")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader", "-np"]
# OpenMPI never frees its start-up allocations and unloads its plugins, so
# LeakSanitizer (build-asan) cannot even name them: leak checks stay on for
# every single-process run, off only in processes mpirun starts.
MPI_ENV = dict(os.environ, LSAN_OPTIONS="detect_leaks=0")


def run_selftest_on_one_and_three_ranks(binary, word):
    """tests/bin/BINARY alone, then under mpirun -np 3: every rank must print '<word> ok rank R of N'."""
    r = subprocess.run([binary], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"{word} ok rank 0 of 1" in r.stdout, r.stderr
    r = subprocess.run(MPIRUN + ["3", binary], capture_output=True, text=True, timeout=120, env=MPI_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in range(3):
        assert f"{word} ok rank {rank} of 3" in r.stdout


def test_collectives_on_one_and_three_ranks():
    run_selftest_on_one_and_three_ranks(SELFTEST, "comm")


def test_zero_updates_equal_one_process_on_uneven_shards():
    run_selftest_on_one_and_three_ranks(os.path.join(BUILD, "tests", "bin", "zero_selftest"), "zero")


def test_failure_on_one_rank_ends_all_with_its_message():
    r = subprocess.run(MPIRUN + ["2", SELFTEST, "--abort-on-rank-1"], capture_output=True, text=True, timeout=120, env=MPI_ENV)
    assert r.returncode != 0
    assert "rank 1 of 2" in r.stderr and "deliberate failure" in r.stderr
    assert "comm ok" not in r.stdout
