"""``easel serve --cluster``: jobs run on a Ray Serve deployment, one replica per device.

:mod:`.settings` (no Ray) holds the ``[cluster]`` config; :mod:`.executor` is the server's side
(the scheduler that sends jobs out); :mod:`.replica` is the deployment. Ray is imported only by the
last two, and only when ``--cluster`` is used (``pip install -e '.[cluster]'``).
"""
