"""``supersub review``: a local web page to browse a run's predictions, name the discovered clusters and save
the labels ``train --extend`` reads (:mod:`.session` holds the state, :mod:`.app` serves it)."""
