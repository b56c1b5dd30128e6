"""The optional C extension st_runtime._wordpiece (the fast tokenization of st_runtime.nativetok); everything else
is configured in pyproject.toml. Without a C compiler the install still succeeds, and st-runtime tokenizes with
`tokenizers` alone (same results, slower: st_runtime.nativetok.available() says which)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "st_runtime._wordpiece",
            ["st_runtime/_wordpiece.c"],
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
