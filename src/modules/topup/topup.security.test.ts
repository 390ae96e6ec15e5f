import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { TOPUP_MATRIX } from "./topup.security.matrix.js";

runSecurityMatrix(TOPUP_MATRIX);
