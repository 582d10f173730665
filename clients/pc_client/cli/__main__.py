"""``python -m pc_client.cli`` (how the sandbox starts its servers)."""
import sys

from pc_client.cli import main

sys.exit(main())
