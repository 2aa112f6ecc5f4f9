// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title RejectingSubmitter: test-only contract that acts (createJob, withdrawProceeds) through
/// `execute` and refuses every ether transfer it is sent, unless its owner opens it.
contract RejectingSubmitter {
    address public immutable owner;
    bool public accepting;

    error NotOwner();
    error Rejected();

    constructor() {
        owner = msg.sender;
    }

    function execute(address to, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        if (msg.sender != owner) revert NotOwner();
        (bool ok, bytes memory ret) = to.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    function setAccepting(bool value) external {
        if (msg.sender != owner) revert NotOwner();
        accepting = value;
    }

    receive() external payable {
        if (!accepting) revert Rejected();
    }
}
