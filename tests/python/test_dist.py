"""Collectives across real processes: mpirun (OpenMPI) on this machine only."""
import os
import subprocess

BUILD = os.environ.get("VLFT_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SELFTEST = os.path.join(BUILD, "tests", "bin", "comm_selftest")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader", "-np"]
# Under ASan (make test-asan) LeakSanitizer is off for ranks started by
# mpirun: OpenMPI's plugins and OpenBLAS leave allocations at exit (no vlft
# frame in any of them); the single-process run keeps leak checking on.
MPI_ENV = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")


def test_collectives_on_one_and_three_ranks():
    r = subprocess.run([SELFTEST], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "comm ok rank 0 of 1" in r.stdout, r.stderr
    r = subprocess.run(MPIRUN + ["3", SELFTEST], capture_output=True, text=True, timeout=120, env=MPI_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in range(3):
        assert f"comm ok rank {rank} of 3" in r.stdout


def test_failure_on_one_rank_ends_all_with_its_message():
    r = subprocess.run(MPIRUN + ["2", SELFTEST, "--abort-on-rank-1"], capture_output=True, text=True, timeout=120,
                       env=MPI_ENV)
    assert r.returncode != 0
    assert "rank 1 of 2" in r.stderr and "deliberate failure" in r.stderr
    assert "comm ok" not in r.stdout
