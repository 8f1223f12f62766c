"""The file to load pouch into mitmproxy: ``mitmdump -s "$(python -m pouch_addon.where)"``.

``-s`` needs a file, not a package; this one imports the installed package, so mitmdump and
pouch must live in the same Python environment (``pouch proxy`` takes care of that).
pouch's concern addons go into mitmproxy's chain as one ``Chain`` (``addons/chain.py``): mitmproxy
then looks each event up once for pouch instead of once per concern; ``LeanWalk`` gives
mitmproxy's walk of its addons for a flow's events less work per addon (``addons/walk.py``).
"""

from pouch_addon.addons import make_addons
from pouch_addon.addons.chain import Chain
from pouch_addon.addons.walk import LeanWalk

addons = [Chain([*make_addons(), LeanWalk()])]
