"""The local page's templates and static files (data only, no code)."""
from pathlib import Path

WEB_DIR = Path(__file__).parent
