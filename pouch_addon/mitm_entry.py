"""The file to load pouch into mitmproxy: ``mitmdump -s "$(python -m pouch_addon.where)"``.

``-s`` needs a file, not a package; this one imports the installed package, so mitmdump and
pouch must live in the same Python environment (``pouch proxy`` takes care of that).
"""

from pouch_addon.addons import make_addons

addons = make_addons()
