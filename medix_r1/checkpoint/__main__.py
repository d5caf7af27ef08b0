from medix_r1.checkpoint.export import main

raise SystemExit(main())
