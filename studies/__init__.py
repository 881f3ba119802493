"""The studies: the papers' findings reproduced through the one trainer, one page each.

``python -m studies <study> --out docs/results/<study> [--quick]`` (see ``__main__``). A
study module holds its runs and comparisons as data (:class:`studies.runs.Run` lists,
comparison pairs, verdict rules) plus ``train(args)`` and ``page(args, trained)``.
"""

STUDIES = ("label_noise", "suppression", "easy_hard", "coherence", "imagenet", "summary")
