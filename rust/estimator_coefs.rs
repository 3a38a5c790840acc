// Placeholder coefficients until scripts/calibrate_estimator.py is run: roughly one token
// per short word, more for long ones. Regenerate: `python scripts/calibrate_estimator.py`.
const O200K_COEFS: [f32; N_EST] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 1.9, 2.3, 3.0, 5.0, 0.3, 1.0, 0.8,
    0.2, 0.5, 0.5, 0.8, 0.5, 0.5, 0.0,
];
const CL100K_COEFS: [f32; N_EST] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 1.9, 2.3, 3.0, 5.0, 0.3, 1.0, 0.8,
    0.2, 0.5, 0.5, 1.1, 0.9, 0.6, 0.0,
];
