from inpo.cli import main

raise SystemExit(main())
