"""Node entry: a fetched firmware bundle staged, safe-mode check, global exception
handler, asyncio.run(main()). Kept short: it is compiled from source at every boot and
its code and names stay in the heap (docs/firmware.md, "Firmware updates")."""

import sys

try:
    open("ota/ready").close()
except OSError:
    pass
else:  # a bundle was fetched: checked and staged in a fresh heap, then a reset
    from citysense import hal, ota

    ota.apply()
    hal.reset()

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
        if "citysense.app" not in sys.modules:  # the app could not load: a trial rolls back
            with open("ota/why", "w") as f:
                f.write("import-error")
        hal.crash()
