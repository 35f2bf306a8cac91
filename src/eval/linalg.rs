//! Small dense linear algebra for the gauges and PCA: a cyclic Jacobi eigen-solver for
//! symmetric matrices (exact enough for d ≤ a few hundred).

#![allow(clippy::needless_range_loop)] // index loops mirror the textbook formulas

/// Eigenvalues (descending) and eigenvectors (as columns: `vectors[row][k]`) of a symmetric
/// matrix.
pub fn symmetric_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a.to_vec();
    let mut v = vec![vec![0.0; n]; n];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i][j] * m[i][j])
            .sum();
        let scale: f64 = (0..n).map(|i| m[i][i] * m[i][i]).sum::<f64>().max(1e-300);
        if off <= 1e-22 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if m[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q][q] - m[p][p]) / (2.0 * m[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let mkp = m[k][p];
                    let mkq = m[k][q];
                    m[k][p] = c * mkp - s * mkq;
                    m[k][q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let mpk = m[p][k];
                    let mqk = m[q][k];
                    m[p][k] = c * mpk - s * mqk;
                    m[q][k] = s * mpk + c * mqk;
                }
                for row in &mut v {
                    let vp = row[p];
                    let vq = row[q];
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| m[b][b].total_cmp(&m[a][a]));
    let values = order.iter().map(|&i| m[i][i]).collect();
    let vectors = (0..n)
        .map(|r| order.iter().map(|&i| v[r][i]).collect())
        .collect();
    (values, vectors)
}

/// Singular values (descending) of an n × d matrix given by rows.
pub fn singular_values(rows: &[Vec<f64>]) -> Vec<f64> {
    let d = rows.first().map_or(0, Vec::len);
    let mut g = vec![vec![0.0; d]; d];
    for r in rows {
        for i in 0..d {
            for j in i..d {
                g[i][j] += r[i] * r[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            g[i][j] = g[j][i];
        }
    }
    let (values, _) = symmetric_eigen(&g);
    let k = rows.len().min(d);
    values
        .into_iter()
        .take(k)
        .map(|v| v.max(0.0).sqrt())
        .collect()
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
}
