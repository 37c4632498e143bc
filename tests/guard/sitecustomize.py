# Loaded by every Python child of the test suite (this folder is on its PYTHONPATH).
import os

if os.environ.get("LLMILL_TEST_ALLOW") is not None:
    import llmill_test_guard

    llmill_test_guard.install()
