"""`python -m src.analyze`: see src/analyze/cli.py."""
import sys

from src.analyze.cli import main

sys.exit(main())
