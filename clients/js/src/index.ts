// @fal-jobs/client: fal-jobs from JavaScript. The server side (`FalJobsClient`, holding the API key)
// and the browser side (`subscribeJob`, `subscribeJobs`, with stream tokens) share the types.

export { FalJobsClient, JobList, createClient } from "./server.js";
export type {
  CallOptions, CreateJobOptions, FalJobsClientOptions, RetryInfo, StreamJobOptions, UploadData, UploadOptions,
  WaitForJobOptions,
} from "./server.js";
export { uploadFile } from "./upload.js";
export type { UploadFileOptions, UploadProgress, XMLHttpRequestConstructor } from "./upload.js";
export { subscribeJob, subscribeJobs } from "./browser.js";
export type {
  ConnectionState, EventSourceConstructor, EventSourceLike, GetToken, SubscribeJobsOptions, SubscribeOptions,
  Subscription, TokenLike,
} from "./browser.js";
export { FalJobsError, FalJobsWaitTimeout } from "./errors.js";
export type { FalJobsErrorOptions } from "./errors.js";
export { SseParser, readSse } from "./sse.js";
export type { SseMessage } from "./sse.js";
export { parseRetryAfter } from "./http.js";
export type { FetchLike, ParseJson } from "./http.js";
export { TERMINAL_STATUSES, isSettled, isTerminal, uploadRef } from "./types.js";
export type {
  CreatedJob, CreateJobRequest, FileKind, Job, JobCost, JobLinks, JobOutput, JobPage, JobStatus, JobType, JobView,
  ListJobsParams, LogLine, ModelField, ModelInfo, OutputKind, OutputLink, OutputStatus, StreamToken,
  StreamTokenScope, Upload,
} from "./types.js";
