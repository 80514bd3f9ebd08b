from vseam_run.cli.main import main

main()
