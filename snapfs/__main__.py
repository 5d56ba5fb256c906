from snapfs.cli import main

raise SystemExit(main())
