import sys
from pathlib import Path

# benches/ modules (corpus, report) import each other without being a package.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
