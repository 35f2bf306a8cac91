"""Makes tests/data/tsne.json: scikit-learn's t-SNE of 300 handwritten digits and its
trustworthiness, for the t-SNE test (the explorer's embedding must keep neighbourhoods about as
well as scikit-learn's does), and the trustworthiness of a fixed poor embedding, to check the
measure itself exactly.

    python scripts/tsne_fixture.py tests/data/tsne.json      # needs scikit-learn and numpy

The pixels get a little Gaussian noise (σ 0.01, fixed seed) so that no two distances tie: with
ties, the neighbour ranks depend on the sort's tie-breaking.
"""
import json
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.manifold import TSNE, trustworthiness

K = 5
PERPLEXITY = 30.0

rng = np.random.default_rng(0)
digits = load_digits()
x = np.round(digits.data[:300] / 16.0 + rng.normal(0.0, 0.01, (300, 64)), 6)
y = TSNE(n_components=2, perplexity=PERPLEXITY, init="pca", random_state=0, max_iter=1000).fit_transform(x)
y = np.round(y, 6)
poor = np.round(x @ rng.normal(0.0, 1.0, (64, 2)), 6)
t, t_poor = trustworthiness(x, y, n_neighbors=K), trustworthiness(x, poor, n_neighbors=K)
json.dump(
    {
        "about": f"scikit-learn {sklearn.__version__}: TSNE(perplexity={PERPLEXITY}, init='pca', "
        f"random_state=0, max_iter=1000) of load_digits()[:300] / 16 plus N(0, 0.01) noise, and "
        f"sklearn.manifold.trustworthiness(n_neighbors={K}) of it and of a random projection",
        "n_neighbors": K,
        "perplexity": PERPLEXITY,
        "x": x.tolist(),
        "labels": digits.target[:300].tolist(),
        "sklearn_embedding": y.tolist(),
        "sklearn_trustworthiness": t,
        "poor_embedding": poor.tolist(),
        "poor_trustworthiness": t_poor,
    },
    open(sys.argv[1], "w"),
)
print("trustworthiness", t, "random projection", t_poor)
