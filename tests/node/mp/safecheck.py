# Under micropython: the crash-loop counter.
from citysense import safe

print("PANIC", [safe.enter("panic") for _ in range(6)])
print("POWER", safe.enter("power-on"), "WDT", safe.enter("wdt"))
