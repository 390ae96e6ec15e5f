import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { ALERTS_MATRIX } from "./alerts.security.matrix.js";

runSecurityMatrix(ALERTS_MATRIX);
