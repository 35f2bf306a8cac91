//! Small dense linear algebra for the gauges and PCA: nalgebra's symmetric eigen-solver
//! (Householder tridiagonalisation, then implicit QR sweeps), behind the callers' row layout.

use nalgebra::{DMatrix, Dyn, SymmetricEigen};

/// Eigenvalues (descending) and eigenvectors (as columns: `vectors[row][k]`) of a symmetric
/// matrix. Non-finite input (a diverged run) gives NaN throughout rather than a panic.
pub fn symmetric_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    if n == 0 {
        return (Vec::new(), Vec::new()); // nalgebra refuses an empty matrix
    }
    let Some(eigen) = eigen(DMatrix::from_fn(n, n, |i, j| a[i][j])) else {
        return (vec![f64::NAN; n], vec![vec![f64::NAN; n]; n]);
    };
    let order = descending(eigen.eigenvalues.as_slice());
    let values = order.iter().map(|&k| eigen.eigenvalues[k]).collect();
    let vectors = (0..n)
        .map(|r| order.iter().map(|&k| eigen.eigenvectors[(r, k)]).collect())
        .collect();
    (values, vectors)
}

/// Singular values (descending) of an n × d matrix given by rows: the square roots of the
/// eigenvalues of the smaller Gram matrix (XᵀX or XXᵀ), so a tall matrix costs one product
/// and a d × d solve.
pub fn singular_values(rows: &[Vec<f64>]) -> Vec<f64> {
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    if n == 0 || d == 0 {
        return Vec::new();
    }
    let x = DMatrix::from_fn(n, d, |i, j| rows[i][j]);
    let gram = if n >= d {
        x.transpose() * &x
    } else {
        &x * x.transpose()
    };
    let Some(eigen) = eigen(gram) else {
        return vec![f64::NAN; n.min(d)];
    };
    descending(eigen.eigenvalues.as_slice())
        .into_iter()
        .map(|k| eigen.eigenvalues[k].max(0.0).sqrt())
        .collect()
}

/// The eigen-decomposition, or `None` for non-finite input (on which the QR sweeps would never
/// converge) or one that does not converge within LAPACK's budget of 30 sweeps per eigenvalue.
fn eigen(m: DMatrix<f64>) -> Option<SymmetricEigen<f64, Dyn>> {
    if !m.iter().all(|v| v.is_finite()) {
        return None;
    }
    let max_sweeps = 30 * m.nrows();
    SymmetricEigen::try_new(m, f64::EPSILON, max_sweeps)
}

/// Indices of `values` from the largest value to the smallest.
fn descending(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        let a = vec![vec![2.0, 1.0], vec![1.0, 2.0]];
        let (vals, vecs) = symmetric_eigen(&a);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        let v0 = [vecs[0][0], vecs[1][0]];
        assert!((v0[0].abs() - 0.5f64.sqrt()).abs() < 1e-9 && (v0[0] - v0[1]).abs() < 1e-9);
    }

    #[test]
    fn eigenvectors_are_columns_in_the_order_of_the_values() {
        // A permuted diagonal plus a coupling: A v_k = λ_k v_k for every column k.
        let a = vec![
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.0, 5.0, 0.5, 0.0],
            vec![0.0, 0.5, -2.0, 0.0],
            vec![0.0, 0.0, 0.0, 3.0],
        ];
        let (vals, vecs) = symmetric_eigen(&a);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
        for (k, lambda) in vals.iter().enumerate() {
            for (r, row) in a.iter().enumerate() {
                let av: f64 = row.iter().enumerate().map(|(j, x)| x * vecs[j][k]).sum();
                assert!((av - lambda * vecs[r][k]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn singular_values_of_tall_and_wide_matrices() {
        // Rows of diag(3, 2) padded with a zero row: σ = 3, 2 either way round.
        let tall = vec![vec![0.0, 2.0], vec![3.0, 0.0], vec![0.0, 0.0]];
        let wide: Vec<Vec<f64>> = (0..2)
            .map(|j| tall.iter().map(|r| r[j]).collect())
            .collect();
        for m in [&tall, &wide] {
            let s = singular_values(m);
            assert_eq!(s.len(), 2);
            assert!(
                (s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12,
                "{s:?}"
            );
        }
    }

    #[test]
    fn empty_and_non_finite_input_give_empty_and_nan() {
        assert_eq!(symmetric_eigen(&[]), (vec![], vec![]));
        assert!(singular_values(&[]).is_empty());
        assert!(singular_values(&[vec![], vec![]]).is_empty());
        let s = singular_values(&[vec![1.0, f64::NAN], vec![0.0, 1.0]]);
        assert!(s.len() == 2 && s.iter().all(|v| v.is_nan()));
        let (vals, vecs) = symmetric_eigen(&[vec![f64::INFINITY]]);
        assert!(vals[0].is_nan() && vecs[0][0].is_nan());
    }
}
