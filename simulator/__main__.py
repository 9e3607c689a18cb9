from guestsim.cli import main

raise SystemExit(main())
