import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { REPORTS_MATRIX } from "./reports.security.matrix.js";

runSecurityMatrix(REPORTS_MATRIX);
