from rankadaptor.cli import main

raise SystemExit(main())
