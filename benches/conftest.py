import sys
from pathlib import Path

# benches/ modules (corpus, report) import each other without being a package.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

# Router() builds the exact counters' tokenizers on a thread (about a second of CPU): wait
# for them here, so that no benchmark runs beside that build.
from satisfice import _core

_core.count_tokens("warm", "o200k_base")
_core.count_tokens("warm", "cl100k_base")
