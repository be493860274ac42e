"""Runs every test_* function of tests/python/test_*.py and reports.

Each test module uses plain asserts and the helpers in vlft_testing.py. The
last line, "python: N passed, M failed, K skipped", is read by tests/run.sh. A module or
function name given on the command line (after the build dir) narrows the run.
"""
import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from vlft_testing import Skip  # noqa: E402


def main():
    wanted = sys.argv[2:]
    passed = failed = skipped = 0
    for name in sorted(os.listdir(HERE)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        # "module.function" filters name their module: others are not even imported.
        if wanted and all("." in w for w in wanted) and not any(w.split(".")[0] == name[:-3] for w in wanted):
            continue
        spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(HERE, name))
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception:
            print(f"FAIL {name}: import failed")
            traceback.print_exc()
            failed += 1
            continue
        for attr in sorted(dir(module)):
            if not attr.startswith("test_") or not callable(getattr(module, attr)):
                continue
            full = f"{name[:-3]}.{attr}"
            if wanted and not any(w in full for w in wanted):
                continue
            start = time.time()
            try:
                getattr(module, attr)()
            except Skip as why:
                # Only for checks that need hardware this machine lacks (a
                # GPU); the reason is printed and counted, never hidden.
                print(f"SKIP {full}: {why}")
                skipped += 1
            except Exception:
                print(f"FAIL {full} ({time.time() - start:.1f}s)")
                traceback.print_exc()
                failed += 1
            else:
                print(f"ok   {full} ({time.time() - start:.1f}s)")
                passed += 1
            sys.stdout.flush()
    print(f"python: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
