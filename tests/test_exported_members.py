import subprocess
import sys
import types
from pathlib import Path

import satisfice


def test_all_is_complete_and_sorted() -> None:
    public = {
        n
        for n in dir(satisfice)
        if not n.startswith("_")
        and not isinstance(getattr(satisfice, n), types.ModuleType)
        and n not in {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    }
    assert set(satisfice.__all__) == public
    assert satisfice.__all__ == sorted(satisfice.__all__)
    for name in satisfice.__all__:
        assert getattr(satisfice, name) is not None


def test_import_does_not_load_numpy_or_json() -> None:
    # json cost `import satisfice` 2.4 ms when the key scrubber imported it at the top
    code = "import sys, satisfice; print([m for m in ('numpy', 'json') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_fresh_router_loads_no_module_it_does_not_need() -> None:
    """Router() reads the bundled registry as JSON and plans without numpy or asyncio: each
    of those imports costs a fresh process milliseconds (tomllib about 2.5, numpy about 100,
    logging and pathlib about 3 each; typing about 3.5, dataclasses, with inspect, ast and
    dis, about 9, and defining dataclasses more: see satisfice/_frozen.py; urllib.parse
    2.4). Run without `site` (-S), whose `.pth` files may import pathlib first and hide that
    satisfice imports it."""
    where = str(Path(satisfice.__file__).resolve().parent.parent)
    unwanted = (
        "numpy",
        "asyncio",
        "tomllib",
        "logging",
        "pathlib",
        "typing",
        "dataclasses",
        "inspect",
        "ast",
        "urllib.parse",
        "ipaddress",
    )
    code = (
        f"import sys; sys.path.insert(0, {where!r}); import satisfice; satisfice.Router(); "
        f"print([m for m in {unwanted!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_request_options_are_the_keywords_chat_accepts() -> None:
    """router._OPTIONS is built without the TypedDict (which needs typing, which Router() does not
    import): it must name exactly RequestOptions' keys."""
    from satisfice import router
    from satisfice.policy import Constraints

    assert set(satisfice.RequestOptions.__annotations__) == router._OPTIONS
    assert router.RequestOptions is satisfice.RequestOptions
    # every constraint can be overridden per request
    assert set(Constraints.__match_args__) <= router._OPTIONS
