from galmet.cli import main

raise SystemExit(main())
