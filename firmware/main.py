"""Node entry: safe-mode check, global exception handler, asyncio.run(main())."""

import sys

from citysense import frame

# the big link buffers first, while the heap is still in one piece
_enc, _dec = frame.Encoder(), frame.Decoder()

from citysense import hal, safe  # noqa: E402

if safe.enter(hal.reset_cause()):
    print("citysense: SAFE MODE (crash loop): app not started, REPL available", file=sys.stderr)
else:
    try:
        from citysense import preload

        preload.run()  # the app, imported module by module (see preload.py)
        del preload
        import asyncio

        from citysense import app

        asyncio.run(app.main(None, _enc, _dec))
    except KeyboardInterrupt:
        print("citysense: interrupted: REPL", file=sys.stderr)
    except SystemExit:
        raise
    except BaseException as exc:  # the global handler: log, then a clean reset
        sys.print_exception(exc, sys.stderr)  # type: ignore[arg-type]  # stubs type stderr as TextIO
        hal.crash()
