"""`python -m src.analyze`: see src/analyze/cli.py."""
import sys

from .cli import main

sys.exit(main())
