"""Client of the text-to-image search service: `python -m client` and `client.api`."""

import warnings

# jina (whose gRPC protocol the client speaks) imports its hub SDK, which imports setuptools'
# deprecated `pkg_resources` and warns on every start: nothing a user of the client can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
