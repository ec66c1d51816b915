"""The application built on the library: the Fashion-MNIST training recipe, evaluation, the demo and the viz.

Arrows run one way: these modules import the library (``attnzoo.layers``, ``kernels``, ``zoo``, ``hub``, ``data``);
nothing in the library imports them.
"""
