"""Stand-in for the one torchvision name pty-chi imports (``transforms.GaussianBlur``).

pty-chi's wheel depends on torchvision, whose CPU wheel for torch 2.13 is not installable here
without pulling CUDA packages; pty-chi uses GaussianBlur only to smooth random initial guesses,
which the benchmark never asks for. Put ``benchmarks/ptychi_shim`` on PYTHONPATH for pty-chi runs
only; never for the package.
"""
