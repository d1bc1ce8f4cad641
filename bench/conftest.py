import pathlib
import sys

# The benchmark modules import each other by name (bench/ is not a package).
sys.path.insert(0, str(pathlib.Path(__file__).parent))
