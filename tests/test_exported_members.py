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
    logging and pathlib about 3 each). Run without `site` (-S), whose `.pth` files may import
    pathlib first and hide that satisfice imports it."""
    where = str(Path(satisfice.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {where!r}); import satisfice; satisfice.Router(); "
        "print([m for m in ('numpy', 'asyncio', 'tomllib', 'logging', 'pathlib') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
