import sys

try:
    from vseam_run.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the imports load: one line, no traceback
    print("interrupted", file=sys.stderr)
    sys.exit(130)

main()
