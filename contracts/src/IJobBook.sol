// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title IJobBook: what NodeRegistry reads of a job to slash for it.
interface IJobBook {
    /// @notice The submitter recorded at createJob (zero if no such job) and whether the job is open.
    function jobParty(bytes32 jobId) external view returns (address submitter, bool open);
}
