from guestagent.entrypoints.cli import main

raise SystemExit(main())
