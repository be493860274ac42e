"""Every fuzz target's seeds (tests/fuzz/corpus/NAME) and saved crash inputs
(tests/fuzz/regressions/NAME) run through the same harness in the normal
build and under ASan+UBSan (make test-asan), so a crash once found stays
fixed. The harnesses trap on a refusal without a message."""
import glob
import os
import subprocess

from vlft_testing import ROOT

BUILD = os.environ.get("VLFT_BUILD", os.path.join(ROOT, "build"))


def test_every_fuzz_target_replays_its_seeds_and_regressions():
    targets = sorted(os.path.basename(p)[5:-2] for p in glob.glob(os.path.join(ROOT, "tests", "fuzz", "fuzz_*.c")))
    assert len(targets) >= 11, targets
    for name in targets:
        corpus = os.path.join(ROOT, "tests", "fuzz", "corpus", name)
        regressions = os.path.join(ROOT, "tests", "fuzz", "regressions", name)
        expected = len([f for f in os.listdir(corpus) if not f.startswith(".")])
        assert expected > 0, f"no seeds for fuzz_{name}"
        if os.path.isdir(regressions):
            expected += len([f for f in os.listdir(regressions) if not f.startswith(".")])
        r = subprocess.run([os.path.join(BUILD, "tests", "fuzz", f"replay_{name}"), corpus, regressions],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, (name, r.returncode, r.stderr[-3000:])
        assert r.stdout.strip() == f"replayed {expected} inputs", (name, r.stdout)
        assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, (name, r.stderr[-3000:])
