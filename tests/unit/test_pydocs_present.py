from tests.helpers import PYDOCS


def test_python_docs_pages_are_installed():
    """The extraction and dedup tests read these real pages; make test installs python3.11-doc."""
    assert PYDOCS.is_dir(), f"{PYDOCS} is missing: apt-get install python3.11-doc"
    assert len(list(PYDOCS.rglob("*.html"))) > 400
