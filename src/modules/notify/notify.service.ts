/**
 * The notify module's public interface for other modules: everything they need to send a
 * notification after their transaction commits. Import from here, not from the files behind it.
 *
 *   await db.transaction().execute(async (trx) => {
 *     …your writes…
 *     await emitEvent(trx, ctx, { type: "purchase.completed", orgId, data: { purchase_id } });
 *     await enqueueEmail(trx, ctx, { to, ...lowBalanceEmail({ orgName, balance, threshold }) });
 *     await enqueueJob(trx, ctx, { queue: "topup.charge", orgId, payload, dedupeKey });
 *   });
 */

export { EMAIL_QUEUE, type EmailMessage, enqueueEmail } from "./email.js";
export {
  autoTopupActionRequiredEmail,
  autoTopupFailedEmail,
  depletedEmail,
  type EmailContent,
  escapeHtml,
  lowBalanceEmail,
} from "./email.templates.js";
export {
  type EmitEventInput,
  EVENT_TYPES,
  type EventData,
  type EventType,
  emitEvent,
  isEventType,
} from "./events.js";
export {
  type BackoffPolicy,
  type EnqueueJobInput,
  enqueueJob,
  type Job,
  type JobHandler,
  JobRunner,
  type JobRunnerOptions,
  PermanentJobError,
  type QueueOptions,
} from "./jobs.js";
export {
  createJobRunner,
  createNotifyWorker,
  jobRunnerFor,
  NOTIFY_RETENTION_DAYS,
  notifyRetentionTask,
  purgeOldNotifications,
  runDueJobs,
} from "./notify.worker.js";
