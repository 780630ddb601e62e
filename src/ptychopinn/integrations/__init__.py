"""Integrations with host applications (imported only on demand; nothing is imported here).

- ``ptychopinn.integrations.ptychodus``: PtychoPINN as a Ptychodus reconstructor library (needs
  the ``ptychopinn[ptychodus]`` extra).
"""
