import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { PRICING_MATRIX } from "./pricing.security.matrix.js";

runSecurityMatrix(PRICING_MATRIX);
